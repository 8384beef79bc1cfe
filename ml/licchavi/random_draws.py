"""The equilibrium test's random bits: torch.randint(2)'s stream, drawn with NumPy.

The original drew `torch.randint(2, (1, n_videos))` from the global generator seeded with
`torch.manual_seed(seed)`. Torch's CPU generator is a 32-bit Mersenne Twister seeded like
MT19937's reference `init_genrand(seed)` (NumPy's legacy seeding), and randint(2) keeps the low
bit of one 32-bit output per value, so NumPy's MT19937 yields the same bits without torch.
The generator state is kept in torch's 5056-byte `Generator.get_state()` layout, so saved runs
stay readable by both and `torch.Generator.set_state` accepts it.
"""

from __future__ import annotations

import struct

import numpy as np

# torch's CPUGeneratorImplState: {the_initial_seed, left, seeded, next, state[624], normal_x,
# normal_y, normal_rho, normal_is_valid} then {next_float_normal_sample, its validity flag}.
_TORCH_STATE = struct.Struct("<QiiQ624Qdddi4xf?3x")
_STATE_WORDS = 624


def initial_state(seed: int) -> np.ndarray:
    """The state torch.Generator().manual_seed(seed).get_state() returns, as uint8 bytes."""
    # RandomState's integer seeding is the reference init_genrand, as torch's manual_seed.
    key = np.random.RandomState(seed & 0xFFFFFFFF).get_state(legacy=False)["state"]["key"]
    return _pack(seed, left=1, next_word=0, key=key, tail=(0.0, 0.0, 0.0, 0, 0.0, False))


def _pack(
    seed: int, left: int, next_word: int, key: np.ndarray, tail: tuple[object, ...]
) -> np.ndarray:
    payload = _TORCH_STATE.pack(seed, left, 1, next_word, *(int(word) for word in key), *tail)
    return np.frombuffer(payload, dtype=np.uint8).copy()


class RandomBits:
    """A stream of 0/1 draws continuing from a saved torch-layout state."""

    def __init__(self, state: np.ndarray) -> None:
        fields = _TORCH_STATE.unpack(np.asarray(state, dtype=np.uint8).tobytes())
        self._seed, left, _seeded, next_word = fields[:4]
        key = np.array(fields[4 : 4 + _STATE_WORDS], dtype=np.uint32)
        self._tail = fields[4 + _STATE_WORDS :]
        # Torch regenerates the block when `left` falls to 0 before a draw (left == 1 now);
        # NumPy when pos reaches 624. Otherwise both point at the next word to temper.
        position = _STATE_WORDS if left == 1 else next_word
        self._generator = np.random.MT19937(0)
        self._generator.state = {
            "bit_generator": "MT19937",
            "state": {"key": key, "pos": position},
        }

    def draw(self, size: int) -> np.ndarray:
        """`size` values of torch.randint(2, ...) from this state, as uint32 0/1."""
        return (self._generator.random_raw(size) & 1).astype(np.uint32)

    def state(self) -> np.ndarray:
        """The current state in torch's layout."""
        numpy_state = self._generator.state["state"]
        position = int(numpy_state["pos"])
        return _pack(
            self._seed,
            left=_STATE_WORDS + 1 - position,
            next_word=position,
            key=numpy_state["key"],
            tail=self._tail,
        )
