"""The metrics writer (clu's TensorBoard + log writer) in a fresh process: hyper-parameters,
scalars and texts reach real event files, and its import does not load Keras (TensorBoard's
hparams API would, for a callback ptjax never uses: 1.4 s of every run's start-up)."""

import glob
import json
import os
import subprocess
import sys

from ptjax.data.tf_setup import import_tf

tf = import_tf()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITE = """
import json, sys
import ml_collections
from ptjax.train import metrics
loaded_keras = sorted(m for m in sys.modules if m == "keras" or m.startswith("keras."))
from tensorboard.plugins.hparams import api
try:
    api.KerasCallback(writer="x")
    callback = "constructed"
except ImportError as e:
    callback = str(e)
writer = metrics.create_writer(sys.argv[1])
config = ml_collections.ConfigDict({"seed": 3, "model": {"d_model": 64, "name": "gpt"}})
metrics.write_config(writer, config)
writer.write_scalars(5, {"train/loss": 2.5})
writer.close()
print(json.dumps({"keras": loaded_keras, "callback": callback}))
"""


def test_events_are_written_without_loading_keras(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", WRITE, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["keras"] == []
    assert "not loaded in ptjax processes" in facts["callback"]
    tags, plugins, loss = set(), set(), None
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
                plugins.add(value.metadata.plugin_data.plugin_name)
                if value.tag == "train/loss":
                    loss = (event.step, float(tf.make_ndarray(value.tensor)))
    assert loss == (5, 2.5)
    assert "hparams" in plugins and "config" in tags, (tags, plugins)
