"""Named hyperparameter sets (``--recipe``): the published settings of the runs climseg follows,
applied beneath every explicitly given option (defaults < recipe < config file < resumed
checkpoint < command line).

Each entry says where its values come from; docs/mlperf.md gives the file and line of each.

* ``mlperf-deepcam``: the MLPerf HPC DeepCAM reference (github.com/mlcommons/hpc,
  ``deepcam/src/deepCam``): LAMB, start lr 0.0055, eps 1e-6, betas (0.9, 0.999), weight decay
  1e-2, 400 warm-up steps, multistep decay 0.1 at milestone 800 (which the reference counts after
  the warm-up: optimizer step 1200 here), 2 samples per rank, batch-norm
  group 1, up to 200 epochs, target DeepCAM IoU 0.82, the ``deepcam`` network and loss weights
  (class frequency ** -0.125), gradients clipped to norm 1 (apex FusedLAMB's ``max_grad_norm``
  default, which the hpc 3.0.0 rules require for LAMB).
* ``sc18-kurth2018``: Kurth et al., "Exascale Deep Learning for Climate Analytics", SC18
  (doi:10.1109/SC.2018.00054): the DeepLabv3+ network of the paper (``kurth2018``), LARC
  around Adam, gradient lag 1, loss weights by inverse square root of the class frequency.
  The paper's fp16 runs used a static loss scale; climseg runs gradient lag in fp32 or bf16
  (fp16 loss scaling with a lagged gradient is refused), so this recipe leaves the precision to
  ``--precision``.
"""

from climseg.errors import ConfigError

RECIPES = {
    "mlperf-deepcam": dict(
        network="deepcam",
        optimizer="lamb",
        lr=0.0055,
        adam_eps=1e-6,
        weight_decay=1e-2,
        lr_schedule="multistep",
        warmup_steps=400,
        milestones=[1200],
        lr_decay=0.1,
        batch_size=2,
        batchnorm_group_size=1,
        epochs=200,
        target_iou=0.82,
        loss_weights="deepcam",
        class_frequencies="deepcam",
        clip_grad_norm=1.0,
        bn_stats_sync="epoch",
    ),
    "sc18-kurth2018": dict(
        network="kurth2018",
        optimizer="larc-adam",
        gradient_lag=1,
        loss_weights="kurth2018",
    ),
}


def recipe_options(name):
    """The TrainConfig values of recipe ``name``."""
    if name not in RECIPES:
        raise ConfigError(f"option recipe: {name!r} is not one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
