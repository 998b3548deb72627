"""Concrete models. Importing this package registers every built-in model kind.

Heavy libraries (torch, sentence-transformers) are imported by the models that need
them on first use, so importing this package stays fast.
"""

from tiered.models import embedding as embedding  # kinds "embedding" and "minilm"
from tiered.models import hashed_ngram as hashed_ngram  # kind "hashed_ngram"
from tiered.models import label_column as label_column  # kind "label_column"
from tiered.models import llamacpp as llamacpp  # kind "llamacpp"
from tiered.models import openai_chat as openai_chat  # kind "openai"
from tiered.replay import model as replay  # kind "replay"
