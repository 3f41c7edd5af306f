"""Field-standard linear baselines: ridge caption decoding and FC-based phenotype prediction.

- :class:`RidgeCaptionDecoder`: ridge regression from brain activity (vertices, parcels or any
  feature vector) to MiniLM caption embeddings, then the nearest caption of a training bank by
  cosine similarity: the linear decoder used as the reference point in brain captioning work.
- :func:`fc_features` + :func:`phenotype_baseline`: Fisher-z functional connectivity (upper
  triangle) of each subject's parcel time series, then cross-validated logistic regression
  (sex, diagnosis) or ridge regression (age) — the standard resting-state phenotype baseline.
  :func:`network_fc_features` feeds the same predictor the 28 within- and between-network FC means
  the rest descriptors summarise (the text states the 7 within-network values and the most atypical
  between-network pair): what a linear reader of the descriptors' FC could reach.
- :func:`chance_baseline`: the base rate a phenotype predictor has to beat, from the training
  subjects' labels alone: their majority class, or their mean age for every test subject.

The temporal-prediction baselines (persistence, linear AR) live in
:mod:`fmrilm.evaluation.temporal_baselines`.
"""

from __future__ import annotations

import numpy as np

from fmrilm.brain.rest_covariance import fc_edges, fisher_fc
from fmrilm.corpus.descriptors_rest import network_fc
from fmrilm.errors import InputError, check_finite
from fmrilm.evaluation.regression import classification_scores, regression_scores
from fmrilm.retrieval.index import IndexConfig, SemanticIndex

# Ridge penalties searched by efficient leave-one-out (GCV); brain data needs strong shrinkage.
DEFAULT_ALPHAS = tuple(np.logspace(-1, 6, 15))
# Inverse regularisation strengths searched by the logistic baseline.
DEFAULT_CS = tuple(np.logspace(-4, 2, 13))


def _features(values, field: str, width: int | None = None) -> np.ndarray:
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or (width is not None and x.shape[1] != width):
        raise InputError(field, "shape", f"{x.shape}; expected [N, {width or 'F'}]")
    check_finite(x, field)
    return x


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = x.std(0)
    return x.mean(0), np.where(std > 1e-12, std, 1.0)


class RidgeCaptionDecoder:
    """Brain features → MiniLM embedding by ridge regression, then nearest caption from a bank.

    Parameters
    ----------
    alphas : sequence of float
        Penalties searched by generalised cross-validation on the training rows (one shared alpha).
    """

    def __init__(self, alphas=DEFAULT_ALPHAS):
        self.alphas = tuple(alphas)
        self.model = None

    def fit(self, features, text_embeddings) -> RidgeCaptionDecoder:
        """Fit on paired rows: features [N, F] and caption embeddings [N, 384]."""
        from sklearn.linear_model import RidgeCV

        x, y = _features(features, "features"), _features(text_embeddings, "text_embeddings")
        if len(x) != len(y):
            raise InputError("features", "rows", f"{len(x)} feature rows but {len(y)} text embeddings")
        # Standardise with training statistics so one alpha suits every feature's scale.
        self.mean, self.scale = _standardizer(x)
        self.model = RidgeCV(alphas=self.alphas).fit((x - self.mean) / self.scale, y)
        return self

    @property
    def alpha(self) -> float:
        return float(self.model.alpha_)

    def predict(self, features) -> np.ndarray:
        """Predicted caption embeddings float32 [N, 384], unit norm."""
        if self.model is None:
            raise InputError("RidgeCaptionDecoder", "model", "not fitted; call fit() first")
        x = _features(features, "features", self.mean.shape[0])
        pred = self.model.predict((x - self.mean) / self.scale)
        norms = np.linalg.norm(pred, axis=1, keepdims=True)
        return (pred / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def decode(self, features, bank_captions, bank_embeddings) -> list[str]:
        """The bank caption nearest to each predicted embedding (exact cosine search)."""
        bank_captions = list(bank_captions)
        index = SemanticIndex.build(bank_embeddings, ids=range(len(bank_captions)),
                                    config=IndexConfig(kind="flat"))
        _, ids, _ = index.search(self.predict(features), k=1)
        return [bank_captions[int(row[0])] for row in ids]


def fc_features(timeseries) -> np.ndarray:
    """Fisher-z FC upper triangle per subject: [S, T, P] → float32 [S, P·(P-1)/2]."""
    ts = np.asarray(timeseries)
    if ts.ndim != 3 or ts.shape[1] < 3:
        raise InputError("timeseries", "shape", f"{ts.shape}; expected [S, T >= 3, P]")
    check_finite(ts, "timeseries")
    return np.stack([fc_edges(run) for run in ts]).astype(np.float32)


def network_fc_features(timeseries, networks) -> np.ndarray:
    """Within- and between-network mean Fisher-z FC per subject, the FC figures of the rest descriptors
    (:func:`~fmrilm.corpus.descriptors_rest.network_fc`): [S, T, P] and network index (P,) → float32 [S, 28]."""
    ts = np.asarray(timeseries)
    nets = np.asarray(networks)
    if ts.ndim != 3 or ts.shape[1] < 3 or nets.shape != (ts.shape[2],):
        raise InputError("timeseries", "shape", f"{ts.shape} with {nets.shape} network labels; expected "
                         "[S, T >= 3, P] and (P,)")
    check_finite(ts, "timeseries")
    blocks = [network_fc(fisher_fc(run), nets) for run in ts]
    upper = np.triu_indices(blocks[0].shape[0])  # the diagonal is each network's within FC
    return np.stack([b[upper] for b in blocks]).astype(np.float32)


def phenotype_baseline(train_features, train_targets, test_features, test_targets, task: str,
                       seed: int = 0, cv: int = 5) -> dict:
    """Fit a linear phenotype predictor on training subjects and score it on test subjects.

    Parameters
    ----------
    train_features, test_features : float [S, F]
        E.g. :func:`fc_features` of the rest time series.
    train_targets, test_targets : [S]
        Labels ("F"/"M", "control"/"patient") or numbers (age in years).
    task : {"classification", "regression"}
        Logistic regression (L2, C by cross-validated log loss) or ridge (alpha by GCV).
    seed : int
        Seeds the cross-validation folds' shuffling.
    cv : int
        Folds for the logistic C search.

    Returns
    -------
    dict
        :func:`classification_scores` or :func:`regression_scores` on the test subjects (intervals
        seeded by `seed`), plus ``"predictions"`` (list) and the chosen ``"regularization"``.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import StratifiedKFold

    x_train = _features(train_features, "train_features")
    x_test = _features(test_features, "test_features", x_train.shape[1])
    y_train, y_test = np.asarray(train_targets), np.asarray(test_targets)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise InputError("phenotype", "rows", f"features {len(x_train)}/{len(x_test)} vs targets "
                         f"{len(y_train)}/{len(y_test)} (train/test)")
    mean, scale = _standardizer(x_train)
    z_train, z_test = (x_train - mean) / scale, (x_test - mean) / scale
    if task == "classification":
        # a small cohort: no more folds than the rarest class has subjects; fewer than 2: C fixed at 1
        n_folds = min(cv, int(np.unique(y_train, return_counts=True)[1].min()))
        if n_folds < 2:
            model = LogisticRegression(C=1.0, max_iter=2000).fit(z_train, y_train)
            model.C_ = np.array([1.0])
        else:
            folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            model = LogisticRegressionCV(Cs=DEFAULT_CS, l1_ratios=(0.0,), cv=folds, scoring="neg_log_loss",
                                         max_iter=2000, use_legacy_attributes=False).fit(z_train, y_train)
        pred = model.predict(z_test)
        # Scores for AUC: probability of the larger sorted label, as classification_scores expects.
        labels, score = np.unique(y_test), None
        if len(labels) == 2 and labels[-1] in model.classes_:
            score = model.predict_proba(z_test)[:, list(model.classes_).index(labels[-1])]
        out = classification_scores(y_test, pred, score, seed)
        out["regularization"] = {"C": float(np.ravel(model.C_)[0])}
    elif task == "regression":
        model = RidgeCV(alphas=DEFAULT_ALPHAS).fit(z_train, y_train.astype(np.float64))
        pred = model.predict(z_test)
        out = regression_scores(y_test.astype(np.float64), pred, seed)
        out["regularization"] = {"alpha": float(model.alpha_)}
    else:
        raise InputError("phenotype", "task", f"{task!r}; expected 'classification' or 'regression'")
    out["predictions"] = pred.tolist()
    return out


def chance_baseline(train_targets, test_targets, task: str, seed: int = 0) -> dict:
    """Score the constant prediction learnt from the training subjects' targets alone.

    Classification predicts the training majority label for every test subject (ties: the first
    label in sorted order) with a constant score, so its AUC is 0.5 and its balanced accuracy
    1 / n_classes; regression predicts the training mean. Taking the constant from the training
    subjects, not the test ones, keeps it a predictor rather than a peek at the test labels.

    Returns
    -------
    dict
        :func:`classification_scores` / :func:`regression_scores` on the test subjects (intervals
        seeded by `seed`, so they share resamples with :func:`phenotype_baseline` of the same
        seed), plus ``"label"`` (the majority class) or ``"value"`` (the mean).
    """
    y_train, y_test = np.asarray(train_targets), np.asarray(test_targets)
    if y_train.ndim != 1 or y_test.ndim != 1 or not y_train.size or not y_test.size:
        raise InputError("chance_baseline", "targets", f"train {y_train.shape}, test {y_test.shape}; "
                         "expected non-empty [S]")
    if task == "classification":
        labels, counts = np.unique(y_train, return_counts=True)
        label = labels[int(np.argmax(counts))]
        out = classification_scores(y_test, np.full(y_test.shape, label), np.zeros(y_test.shape), seed)
        return {**out, "label": label.item()}
    if task == "regression":
        value = float(y_train.astype(np.float64).mean())
        return {**regression_scores(y_test.astype(np.float64), np.full(y_test.shape, value), seed), "value": value}
    raise InputError("chance_baseline", "task", f"{task!r}; expected 'classification' or 'regression'")
