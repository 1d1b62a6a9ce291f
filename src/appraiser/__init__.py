"""Diamond Appraiser: prices a diamond from its characteristics and says why."""
