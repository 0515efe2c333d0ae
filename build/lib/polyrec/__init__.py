"""polyrec: multi-task recommendation with shared experts and task dependencies."""
from polyrec.config import Config, ConfigError
from polyrec.data.tables import Tables
from polyrec.errors import DataError
from polyrec.recommender import MultiTaskRecommender

__all__ = ["Config", "ConfigError", "DataError", "MultiTaskRecommender", "Tables"]
__version__ = "0.1.0"
