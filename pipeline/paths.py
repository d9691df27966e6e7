"""Every file and folder the pipeline reads or writes, relative to the project root (where `dvc repro` and
every command run). Imported, never copied: dvc.yaml names the same paths (tests/test_pipeline_deps.py).
Light on purpose (pathlib only), so that the CLI can show them in --help without importing torch."""
from pathlib import Path

PARAMS = Path("params.yaml")
# prepare
PREPARED = Path("data/prepared")              # {train,val,test}.json, summary.json, shapes/
DATASET_PLOTS = Path("plots/dataset")         # dataset.png, objects_per_class.csv
# train
MODEL = Path("models/model.pt")               # the last epoch's checkpoint (resumable)
BEST_MODEL = Path("models/best.pt")           # the best validated epoch's weights (without validation: the last)
TRAIN_LOCK = Path("models/.train.lock")       # one `fcos-exp train` per folder
TRAIN_METRICS = Path("metrics/train.json")
STEPS_CSV = Path("plots/train_steps.csv")     # per-step losses and lr (dvc plots)
# evaluate
EVAL_METRICS = Path("metrics/eval.json")
PR_METRICS = Path("metrics/pr.json")          # F1-optimal thresholds per class, confusion matrix
PER_CLASS_CSV = Path("plots/per_class_ap.csv")   # (dvc plots, as the two below)
PR_CSV = Path("plots/pr_curve.csv")
CONFUSION_CSV = Path("plots/confusion.csv")
EVAL_PLOTS = Path("plots/eval")               # PR, F1 and confusion figures
ERRORS_METRICS = Path("metrics/errors.json")  # TIDE error breakdown, overall, per class, the worst images
WORST_IMAGES = Path("plots/eval/worst")       # the worst images drawn, mosaic.png
ERRORS_PER_IMAGE_CSV = Path("plots/errors_per_image.csv")   # every image's errors, worst first (dvc plots)
TEST_DETECTIONS = Path("metrics/detections.json.gz")   # the test detections, COCO results (pipeline/detections.py)
# visualize
TRAINING_FIGURES = Path("plots/figures")      # training curves, per-class AP
DETECTIONS = Path("plots/detections")         # detection images and mosaic.png
# commands outside the DVC stages
PREDICTIONS = Path("outputs/predict")         # `fcos-exp predict`
ONNX_MODEL = Path("models/model.onnx")        # `fcos-exp export`
REPORTS = Path("reports")                     # `fcos-exp report`
# MLflow (pipeline/tracking)
RUN_FILE = Path("models/mlflow_run.json")     # the run the stages of one `dvc repro` share
PENDING_FILE = Path("models/mlflow_pending.jsonl")   # tracking operations kept while MLflow is unreachable
# tuning (pipeline/tuning)
DEFAULT_JOURNAL = Path("experiments/optuna.journal")   # the study's storage unless tune.storage names one
BEST_PARAMS = Path("experiments/best_params.yaml")     # the best trial, for `fcos-exp tune --apply`
TUNING_FIGURES = Path("outputs/tuning")                # <study name>/tuning_*.png
