"""The experiments: each measures one of nanoGPT's choices on the NumPy GPT and returns arrays and
dicts for the notebooks to plot.

- `attention_scaling`: why scores are divided by sqrt(d_k) (notebook 01);
- `residual_variance`: why `c_proj` starts at 0.02/sqrt(2 n_layer) (notebook 02);
- `optimizer_cost`: AdamW's decay groups and the bytes a multi-pass or fused step moves
  (notebooks 03 and 05).
"""
