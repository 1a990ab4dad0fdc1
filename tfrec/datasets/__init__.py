"""Loaders of public recommendation datasets: the original files -> tfrec columns and samples.

Nothing is downloaded: each loader reads files the user already has, and a missing file raises
FileNotFoundError naming the file and where to get the dataset. Each follows the published
preprocessing of the papers that use the data (see docs/datasets.md):

  load_movielens_ranking / load_movielens_retrieval  MovieLens 100K / 1M  DIN; YoutubeDNN, MIND, SDM
  load_amazon                                         Amazon 5-core        DIN / DIEN
  load_taobao                                         Taobao UserBehavior  CLSR (SIM)
  load_ali_ccp                                        Ali-CCP              ESMM
  load_census_income                                  UCI census-income    MMoE / PLE

Every loader returns a `LoadedDataset`: train / test (and validation) frames, the feature
columns, the label columns and the history features its models take.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

from ._common import LoadedDataset
from .aliccp import ALI_CCP_FIELDS, ALI_CCP_TASKS, load_ali_ccp, read_ali_ccp
from .amazon import load_amazon, read_amazon_reviews
from .census import CENSUS_DENSE, CENSUS_SPARSE, CENSUS_TASKS, load_census_income
from .movielens import (MOVIELENS_GENRES, MOVIELENS_PROFILE_FEATURES, load_movielens_ranking,
                        load_movielens_retrieval, read_movielens)
from .taobao import CLSR_TIME_RANGE, load_taobao, read_taobao

__all__ = [
    "ALI_CCP_FIELDS", "ALI_CCP_TASKS", "CENSUS_DENSE", "CENSUS_SPARSE", "CENSUS_TASKS", "CLSR_TIME_RANGE",
    "LoadedDataset", "MOVIELENS_GENRES", "MOVIELENS_PROFILE_FEATURES",
    "load_ali_ccp", "load_amazon", "load_census_income", "load_movielens_ranking", "load_movielens_retrieval",
    "load_taobao", "read_ali_ccp", "read_amazon_reviews", "read_movielens", "read_taobao",
]
