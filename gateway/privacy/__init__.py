"""Local differential privacy: exact samplers and the reports built on them."""
