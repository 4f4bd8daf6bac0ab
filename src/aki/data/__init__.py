"""Data for aki: deterministic synthetic scenes and questions (``aki.data.synthetic``), loaders and collators."""
