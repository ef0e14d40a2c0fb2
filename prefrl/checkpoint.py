"""Old name of :mod:`prefrl.checkpoints` (PPO checkpoints), kept for code written against it.

``save``/``load`` are :func:`prefrl.checkpoints.save_ppo`/``load_ppo``; new
code imports :mod:`prefrl.checkpoints`.
"""

from prefrl.checkpoints import (  # noqa: F401
    PPO_KIND as KIND,
)
from prefrl.checkpoints import (  # noqa: F401
    check_obs_dim,
    load_policy,
    load_value_fn,
)
from prefrl.checkpoints import load_ppo as load  # noqa: F401
from prefrl.checkpoints import save_ppo as save  # noqa: F401
from prefrl.io import FileFormatError  # noqa: F401
