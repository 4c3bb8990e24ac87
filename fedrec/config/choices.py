"""Every choice list of the configuration, in one place; the modules that implement
the choices import their names from here.
"""

STRATEGIES = ("fedavg", "ffa-lora", "fedadam", "fedyogi", "fedavgm", "fedprox")
PARTITIONERS = ("user", "iid", "skewed")
ITEM_TEXTS = ("title", "title-genres")
ACCOUNTANTS = ("rdp", "prv")
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")
CLIENT_DP_NOISE = ("central", "distributed")
CLIENT_SAMPLING = ("fixed", "poisson")
EVAL_SPLITS = ("test", "validation")
RECOMMENDERS = ("llm", "mf", "ease")
LLM_INPUTS = ("text", "hybrid")
LLM_OBJECTIVES = ("preference", "ranking")
