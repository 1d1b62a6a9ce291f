"""Diamond Appraiser: prices a diamond from its characteristics and says why."""

import os
import warnings

# XGBoost and LightGBM each bring an OpenMP runtime; by default a runtime's idle threads spin
# for a while after every parallel call, stealing the core the other library's call needs.
# A blended champion alternates the two on every request: passive waiting halved its time for
# 1,000 stones (24.9 -> 12.8 ms) and for one explanation (11.0 -> 6.5 ms). Must be set before
# either library loads; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pandera probes for pyspark when it is installed (the Spark extra), and pyspark warns on import
# that it does not yet fully support pandas 3; our Spark path only hands it pandas frames.
warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support", category=FutureWarning
)
