"""A logger the framework has never heard of: a plain class with the logger methods.

It writes `metrics.jsonl` in the run folder, one JSON object per call. (Subclassing
`src.trainer.loggers.LoggerBase` instead gives no-op defaults to leave out.)
"""

import json
from pathlib import Path


class JsonLinesLogger:
    def __init__(self, run_dir, filename="metrics.jsonl"):
        # run_dir is passed by the framework; the rest comes from conf/logger/jsonl.yaml.
        self.path = Path(run_dir) / filename

    def log_metrics(self, metrics, step):
        self._write({"step": step, **metrics})

    def log_image(self, name, image, step):
        pass  # no images in a text file

    def log_hyperparams(self, params, metrics, step):
        if metrics:  # the call at the end, with the final metrics
            self._write({"step": step, "final": dict(metrics), "params": dict(params)})

    def purge_after(self, step):
        """A resumed run continues at `step`: drop what was logged after it."""
        if self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            self.path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))

    def save_artifact(self, path):
        pass

    def state_dict(self):
        return {}  # nothing to carry over a resume: the file itself is the record

    def load_state_dict(self, state):
        pass

    def close(self):
        pass

    def _write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
