"""MLflow, the one layer every write and read of tracking data goes through, split by job: `store` (URI,
client, experiment, finding runs), `ops` (each operation, sent or replayed), `run` (`Tracker`), `offline`
(the queue and `fcos-exp sync`), `runfile` (the pipeline's current run), `callback` (`MlflowCallback`)."""
from .callback import MlflowCallback
from .offline import sync_pending
from .run import Tracker
from .store import find_run, reader, tracking_uri

__all__ = ["MlflowCallback", "Tracker", "find_run", "reader", "sync_pending", "tracking_uri"]
