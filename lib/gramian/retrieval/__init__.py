"""Retrieval (paper §6): ScaNN item index, top-n publishing to Delta, fold-in recommendations for new users."""

from gramian.retrieval.index import IndexParams, ItemIndex, build_index, choose_params, load_index, topn_excluding
from gramian.retrieval.recommend import Recommendation, recommend, recommend_from_index

__all__ = ["IndexParams", "ItemIndex", "Recommendation", "build_index", "choose_params", "load_index", "recommend",
           "recommend_from_index", "topn_excluding"]
