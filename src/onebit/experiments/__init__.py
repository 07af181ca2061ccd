"""The paper's study as a tool: sweep files (sweep), execution (runner), a results store (store), cost
counts (cost) and the Markdown report (report)."""
