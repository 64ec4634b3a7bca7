from pyg_tensorpot.nn.conv.tensor_embedding import TensorEmbedding
from pyg_tensorpot.nn.conv.tensor_interaction import TensorInteraction
from pyg_tensorpot.nn.conv.hipnn_interaction import HIPNNInteraction

__all__ = ['TensorEmbedding', 'TensorInteraction', 'HIPNNInteraction']
