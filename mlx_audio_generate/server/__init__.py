"""`mlx-audio-server`: a local HTTP job queue and web UI over the generation API.

One worker thread owns the device and runs jobs in order; models are loaded on first use and kept.
"""

from .app import create_app
from .jobs import JobQueue
from .models import ModelEntry, discover_models

__all__ = ["create_app", "JobQueue", "ModelEntry", "discover_models"]
