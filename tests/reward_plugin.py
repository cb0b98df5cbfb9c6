"""Reward plug-ins for tests/test_rewards.py (`--reward reward_plugin:NAME`; pytest puts tests/ on sys.path)."""
import numpy as np


def brightness(images, prompts):
    """Mean pixel value: uint8 (B, H, W, 3), B prompts -> (B,)."""
    return images.astype(np.float64).mean(axis=(1, 2, 3))


def darkness(images, prompts):
    return -brightness(images, prompts)


def wrong_shape(images, prompts):
    return np.zeros((len(prompts), 2))


def not_finite(images, prompts):
    out = brightness(images, prompts)
    out[0] = np.nan
    return out


def not_numbers(images, prompts):
    return ["good"] * len(prompts)


def one_argument(images):
    return brightness(images, None)


NOT_A_FUNCTION = 3
