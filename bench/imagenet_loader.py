"""ImageNet input pipeline speed: JPEG decoding alone, and decoding + training augmentation, in images/s.

The benchmark lives in ``src/onebit/bench/imagenet_loader.py``; see ``python bench/imagenet_loader.py --help``.
"""

from onebit.bench.imagenet_loader import main

if __name__ == "__main__":
    main()
