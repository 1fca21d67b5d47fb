import torch, os, sys
from transformers import BertConfig, BertModel
out = os.environ["OUT"]
cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)
bert = BertModel(cfg).eval()
class W(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, ids, mask, types): return s.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
w = W(bert).eval()
ids = torch.randint(0, 1000, (1, 16))
with torch.no_grad():
    torch.onnx.export(w, (ids, torch.ones_like(ids), torch.zeros_like(ids)), os.path.join(out, "bert_tiny.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["out"],
        dynamic_axes={n: {0: "batch"} for n in ["input_ids", "attention_mask", "token_type_ids"]}, opset_version=17, dynamo=False)
    import numpy as np
    ids = torch.randint(0, 1000, (2, 16)); mask = torch.ones_like(ids); mask[1, 10:] = 0
    y = w(ids, mask, torch.zeros_like(ids))
    np.savez(os.path.join(out, "bert_tiny_io.npz"), input_ids=ids.numpy(), attention_mask=mask.numpy(), token_type_ids=torch.zeros_like(ids).numpy(), out=y.numpy())
print("ok")
