"""lab/trained.py: what the earlier stages made, opened for the later ones: the tokenizer of the shards,
the trained LM and SAEs rebuilt from the checkpoints that train_lm.py and train_sae.py write.

    enc = load_tokenizer("out/data")               # the tiktoken Encoding the shards were made with
    model, ckpt = load_lm(out, "lm")               # <out>/lm/ckpt.pt: the Transformer, in eval mode
    sae, ckpt = load_sae("out/sae/F4096/ckpt.pt")  # the SAE, in eval mode

A missing or damaged checkpoint is one line naming the file and the command that makes it
(plumbing.load_checkpoint checks the digest of its tensors).
"""
import os

import data
from lab.corpus import tokenizer_file
from lab.plumbing import load_checkpoint
from model import ModelConfig, Transformer
from sae import SAE, SAEConfig


def load_tokenizer(data_dir):
    """The tiktoken Encoding the shards in data_dir were made with (its file checked against meta.json)."""
    return data.open_tokenizer(*tokenizer_file(data_dir))


def load_lm(out, lm_dir="lm", device="cpu"):
    """The trained model and its checkpoint."""
    path = os.path.join(out, lm_dir, "ckpt.pt")
    ckpt = load_checkpoint(path, "LM checkpoint", f"run python train_lm.py --out {out} first")
    model = Transformer(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def load_sae(path, device="cpu"):
    """A trained SAE and its checkpoint."""
    ckpt = load_checkpoint(path, "SAE checkpoint", "run python train_sae.py first")
    s = SAE(SAEConfig(**ckpt["sae_config"]))
    s.load_state_dict(ckpt["sae"])
    return s.to(device).eval(), ckpt
