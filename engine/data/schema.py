"""Column names and role values, defined once and used everywhere (engine, app, docs, tests)."""

# votes.csv (input contract)
IMAGE = "image"  # path relative to the dataset folder
ROLE = "role"  # meta | test | train | unlabeled | empty (engine decides)
PATIENT_ID = "patient_id"  # images of one patient never straddle meta/test/train
NOTE = "note"
RESERVED_INPUT_COLUMNS = (IMAGE, ROLE, PATIENT_ID, NOTE)  # every other column is one expert

# roles
META, TEST, TRAIN, UNLABELED = "meta", "test", "train", "unlabeled"
ROLES = (META, TEST, TRAIN, UNLABELED)

# aggregation / labels.csv (output contract)
VOTES = "votes"  # "expert=class;expert=class" in expert column order, graded experts only
MAJORITY = "majority"
TIE = "tie"  # True when the majority vote was a tie resolved by the documented rule
CONSENSUS = "consensus"  # >= 2 graders and all agree
N_GRADERS = "n_graders"
AGREEMENT = "agreement"  # fraction of graders voting for the majority class
PROB_PREFIX = "p:"  # p:<class> soft-label / probability columns
SUGGESTED = "suggested"
CONFIDENCE = "confidence"
FLAG = "flag"
FLAG_CODE = "flag_code"  # ';'-joined machine-readable reasons (engine.flags.FLAG_CODES), the first is the primary
FLAG_REASON = "flag_reason"  # the same reasons in words, for people (never parsed)
FLAG_SCORE = "flag_score"  # P(the majority label is wrong)
PRIORITY = "priority"  # review order, higher first (expected severity distance on an ordinal scale)
METHOD_PROB_PREFIX = "method_p:"  # method_p:<class>: the method's own soft label / its model's prediction
VERIFIED = "verified"  # 1 = a reviewer's label given with --reviewed (held fixed: p:<class> is one-hot on it)
PRIOR_PREFIX = "prior:"  # prior.csv: prior:<class> = the calibrated model probability the label estimate started from

# export (cleaned labels)
FINAL_LABEL = "final_label"
SOURCE = "source"  # consensus | review | model | majority
SOURCES = ("consensus", "review", "model", "majority")
REVIEWER = "reviewer"
REVIEWED_AT = "reviewed_at"

# predict
PREDICTED = "predicted"

# true/false as text (labels.csv `consensus`/`flag` cells, command-line and YAML options)
TRUE_TEXT = ("1", "1.0", "true", "yes", "on")
FALSE_TEXT = ("0", "0.0", "false", "no", "off")


def parse_bool(text) -> bool | None:
    """True/False for the spellings above (any case, spaces ignored), None for anything else."""
    value = str(text).strip().lower()
    return True if value in TRUE_TEXT else False if value in FALSE_TEXT else None


LABELS_COLUMNS_HEAD = (IMAGE, ROLE, VOTES, MAJORITY, CONSENSUS)
LABELS_COLUMNS_TAIL = (SUGGESTED, CONFIDENCE, FLAG, FLAG_CODE, FLAG_REASON, FLAG_SCORE, PRIORITY)


def prob_col(cls: str) -> str:
    return f"{PROB_PREFIX}{cls}"


def prob_cols(classes) -> list[str]:
    return [prob_col(c) for c in classes]


def method_prob_col(cls: str) -> str:
    return f"{METHOD_PROB_PREFIX}{cls}"


def prior_col(cls: str) -> str:
    return f"{PRIOR_PREFIX}{cls}"


def labels_columns(classes) -> list[str]:
    return [*LABELS_COLUMNS_HEAD, *prob_cols(classes), *LABELS_COLUMNS_TAIL, *(method_prob_col(c) for c in classes),
            VERIFIED]


def export_columns(classes) -> list[str]:
    return [IMAGE, FINAL_LABEL, SOURCE, VOTES, MAJORITY, *prob_cols(classes), REVIEWER, REVIEWED_AT, NOTE]


def predict_columns(classes) -> list[str]:
    return [IMAGE, *prob_cols(classes), PREDICTED, CONFIDENCE]
