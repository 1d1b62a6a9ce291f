"""Diamond Appraiser: prices a diamond from its characteristics and says why."""

import warnings

# pandera probes for pyspark when it is installed (the Spark extra), and pyspark warns on import
# that it does not yet fully support pandas 3; our Spark path only hands it pandas frames.
warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support", category=FutureWarning
)
