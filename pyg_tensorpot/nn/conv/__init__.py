from pyg_tensorpot.nn.conv.tensor_embedding import TensorEmbedding
from pyg_tensorpot.nn.conv.tensor_interaction import TensorInteraction

__all__ = ['TensorEmbedding', 'TensorInteraction']
