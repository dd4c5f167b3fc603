"""The cold-start benchmark (``make coldstart-bench``): a held request wakes a standby
engine; see __main__."""
