"""Data for tfrec models.

Your own data:
  infer_feature_columns(df, label_columns, ...)   DataFrame -> feature columns with vocabularies;
                                                  grow_vocabularies(columns, newer_df) adds new values
  build_din_samples(log, maxlen, ...)             behaviour log -> DIN samples (history, negatives),
                                                  split leave-last-out; build_sim_samples for SIM/CLSR
  retrieval_samples(log, seq_maxlen, ...)         interaction log -> retrieval samples (leave-last-out);
                                                  sample_feature_columns(train, ...) their columns
  leave_last_out(df, user_col, time_col)          each user's last events -> the test frame
  df_to_inputs(df, columns) / df_to_dataset(...)  DataFrame -> {feature: array} / tf.data pipeline

Planted-truth synthetic data with known click probabilities (short click histories, long
behaviour histories, retrieval), and the UCI Adult multi-task benchmark.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

from .adult import ADULT_PATH_VARIABLE, ADULT_TASKS, ADULT_URL, adult_feature_columns, load_adult
from .behaviour import (NEGATIVE_OUTCOME_VALUES, build_din_samples, build_sim_samples, check_esmm_labels,
                        leave_last_out)
from .columns import (ColumnInferenceError, build_vocabulary, grow_vocabularies, infer_feature_columns, shares_of,
                      unknown_counts, unknown_shares)
from .long_history import (LONG_HISTORY_SETTINGS, long_history_feature_columns, make_long_history_data,
                           make_long_history_setting)
from .pipeline import df_to_dataset, df_to_inputs, without_autotuning
from .planted import (DIN_HISTORY_FEATURES, SPARSE_USER_SETTINGS, din_feature_columns, make_behaviour_log,
                      make_multitask_data, make_sparse_user_log, multitask_feature_columns, oracle_auc)
from .retrieval import (PLANTED_RANKINGS, RETRIEVAL_PROFILE_FEATURES, RetrievalData, make_retrieval_data,
                        planted_recalls, planted_top_k, popularity_top_k, retrieval_feature_columns,
                        retrieval_samples, sample_feature_columns, sdm_feature_columns,
                        true_next_item_probabilities)

__all__ = [
    "ADULT_PATH_VARIABLE", "ADULT_TASKS", "ADULT_URL", "DIN_HISTORY_FEATURES", "LONG_HISTORY_SETTINGS",
    "NEGATIVE_OUTCOME_VALUES", "SPARSE_USER_SETTINGS",
    "ColumnInferenceError", "build_vocabulary", "build_sim_samples", "grow_vocabularies", "infer_feature_columns",
    "leave_last_out",
    "adult_feature_columns", "build_din_samples", "check_esmm_labels", "df_to_dataset", "df_to_inputs",
    "din_feature_columns", "load_adult", "long_history_feature_columns", "make_behaviour_log",
    "make_long_history_data", "make_long_history_setting", "make_multitask_data", "make_sparse_user_log",
    "multitask_feature_columns", "oracle_auc",
    "PLANTED_RANKINGS", "RETRIEVAL_PROFILE_FEATURES", "RetrievalData", "make_retrieval_data", "planted_recalls",
    "planted_top_k", "popularity_top_k", "retrieval_feature_columns", "retrieval_samples", "sample_feature_columns",
    "sdm_feature_columns", "shares_of", "unknown_counts", "unknown_shares",
    "true_next_item_probabilities", "without_autotuning",
]
