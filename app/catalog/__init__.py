"""The catalog: criteria, videos and users as the comparisons name them."""
