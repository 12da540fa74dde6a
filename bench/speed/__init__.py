"""Speed and footprint: the package's engine against the research loop and llama.cpp, memory, GPU decode."""
