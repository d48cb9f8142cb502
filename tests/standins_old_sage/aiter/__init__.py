"""STAND-IN for an older aiter whose Sage entry point is `aiter.ops.triton.fav3_sage` (see ../standins)."""
