"""The overload benchmark (``make flow-bench``): flow control on and off; see __main__."""
