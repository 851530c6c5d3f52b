"""Training of draft heads (`specjax.training.trainer`, `data`, `corpus`, `teacher`)."""
