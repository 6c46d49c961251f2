"""NumPy reference of the keep-plan algorithm: scores (scores.c), spectral smoothing (sss.c), top-k selection and
budget integerisation (select.c), the KeepPlan type (plan.c's output). Imports only NumPy."""
