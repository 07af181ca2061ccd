"""Training throughput on this machine: the full step vs its parts vs the machine's fp32 matmul rate.

The benchmark lives in ``src/onebit/bench/train_throughput.py``; see ``python bench/train_throughput.py --help``.
"""

from onebit.bench.train_throughput import main

if __name__ == "__main__":
    main()
