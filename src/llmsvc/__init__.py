"""llmsvc: a light control plane for serving large language models on GPU fleets."""

__version__ = "0.1.0"
