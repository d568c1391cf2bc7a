"""Small training profiles for tests: every family on a real grid, and a clearly worse one.

Shared by tests/ml and tests/dags (the ml_pipeline DAG test writes them as YAML files).
"""

# Every family, each with a grid of two points, on cheap features: the whole search takes
# seconds on the sample. Halving for the tree families, as in the real profiles.
TINY_PROFILE = {
    "name": "tiny",
    "cv_folds": 3,
    "random_state": 42,
    "n_jobs": 2,
    "train_subsets": ["train"],
    "baseline": True,
    "features": {
        "word": {"ngram_range": [1, 2]},
        "char": {"ngram_range": [2, 4], "min_df": 2},
    },
    "families": {
        "linear_svc": {"search": "grid", "grid": {"C": [0.3, 1.0]}},
        "logreg": {
            "search": "grid",
            "fixed": {"solver": "saga", "max_iter": 15, "tol": 0.01},
            "grid": {"C": [10.0, 30.0]},
        },
        "random_forest": {
            "search": "halving",
            "halving": {"factor": 2},
            "select_k": 500,
            "fixed": {"n_estimators": 10},
            "grid": {"min_samples_leaf": [1, 2]},
        },
        "xgboost": {
            "search": "halving",
            "halving": {"factor": 2},
            "select_k": 300,
            "fixed": {"n_estimators": 8, "max_bin": 16},
            "grid": {"max_depth": [2, 4]},
        },
    },
}

# Clearly worse than TINY_PROFILE's winner (a shallow forest of a few trees).
WORSE_PROFILE = {
    "name": "worse",
    "cv_folds": 3,
    "random_state": 42,
    "n_jobs": 2,
    "train_subsets": ["train"],
    "baseline": False,
    "features": {"word": {"ngram_range": [1, 1]}, "char": None},
    "families": {
        "random_forest": {
            "search": "grid",
            "select_k": 200,
            "fixed": {"n_estimators": 5, "max_depth": 4},
            "grid": {"min_samples_leaf": [1, 5]},
        },
    },
}

# One family, one candidate, TINY_PROFILE's features: the cheapest profile whose model
# is promoted as a first champion (not clearly worse than the plain baseline, which is
# the same kind of model). For tests of the stages' wiring, not of the search.
LINEAR_PROFILE = {
    "name": "linear",
    "cv_folds": 2,
    "random_state": 42,
    "n_jobs": 2,
    "train_subsets": ["train"],
    "baseline": True,
    "features": TINY_PROFILE["features"],
    "families": {"linear_svc": {"search": "grid", "grid": {"C": [1.0]}}},
}
