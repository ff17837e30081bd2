"""The validator's tests, one file per area, with its migration sets in sets/."""
