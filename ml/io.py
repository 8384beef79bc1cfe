"""Score files on disk: fast CSV writing of training results, and the saved per-criterion states."""

from __future__ import annotations

import codecs
import io
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ml.config import LicchaviConfig
    from ml.licchavi import CriterionResult, LicchaviState

GLOBAL_SCORES_FILE = "global_scores.csv"
INDIVIDUAL_SCORES_FILE = "individual_scores.csv"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
_STATE_ARCHIVE = "state"  # torch.save names the archive's folder after the file
HISTORY_COLUMNS = (
    "fit",
    "s",
    "gen",
    "reg",
    "l2_norm",
    "grad_sp",
    "grad_norm",
    "elapsed",
)
# Rows formatted per block, so the byte matrices stay around a hundred megabytes.
ROWS_PER_BLOCK = 1_000_000
DEFAULT_DECIMALS = 6
_ZERO = ord("0")
_NUL = 0  # padding byte of fixed-width matrices; dropped before writing

ColumnValues = Union[np.ndarray, "pd.Series[Any]", "pd.Categorical[Any]", list[Any]]


def write_csv(
    path: str | Path, columns: Mapping[str, ColumnValues], decimals: int = DEFAULT_DECIMALS
) -> None:
    """Write equally long columns as CSV, formatting whole blocks of rows with numpy.

    Floats are written in fixed point with ``decimals`` decimals and trailing zeros removed
    (NaN as an empty field), integers and booleans as such, anything else as text (quoted
    when needed). pandas' ``to_csv`` formats row by row and takes minutes for ten million rows.
    """
    names = list(columns)
    prepared = [_prepare(columns[name]) for name in names]
    lengths = {column.length for column in prepared}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    n_rows = lengths.pop() if lengths else 0
    header = ",".join(_quote(name) for name in names) + "\n"
    with open(path, "wb") as handle:
        handle.write(header.encode())
        for start in range(0, n_rows, ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, n_rows)
            handle.write(_format_block(prepared, start, stop, decimals))


@dataclass(frozen=True)
class _Column:
    """A column ready for block formatting: text as codes into a byte table, or numbers."""

    kind: Literal["text", "int", "float"]
    values: np.ndarray  # codes for text (-1 = missing), else the numbers
    table: np.ndarray | None = None  # text only: (n_categories + 1, width) uint8

    @property
    def length(self) -> int:
        return len(self.values)


def write_frame(path: str | Path, frame: pd.DataFrame, decimals: int = DEFAULT_DECIMALS) -> None:
    """write_csv of every column of a DataFrame, in order."""
    write_csv(path, {str(name): frame[name] for name in frame.columns}, decimals)


def _prepare(values: ColumnValues) -> _Column:
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        categorical = pd.Categorical(values)
        return _Column(
            "text", categorical.codes.astype(np.int64), _encode(list(categorical.categories))
        )
    if isinstance(values, pd.Categorical):
        return _Column("text", values.codes.astype(np.int64), _encode(list(values.categories)))
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if array.dtype == bool:
        return _Column("text", array.astype(np.int64), _encode(["False", "True"]))
    if np.issubdtype(array.dtype, np.integer):
        return _Column("int", array.astype(np.int64))
    if np.issubdtype(array.dtype, np.floating):
        return _Column("float", array.astype(np.float64))
    codes, uniques = pd.factorize(array)
    return _Column("text", codes.astype(np.int64), _encode([str(u) for u in uniques]))


def _quote(text: str) -> str:
    if any(char in text for char in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _encode(categories: list[Any]) -> np.ndarray:
    """Categories as a (n + 1, width) uint8 matrix of UTF-8 bytes, NUL-padded; row n is empty."""
    texts = [str(c) for c in categories]
    joined = "\0".join(texts)
    if any(char in joined for char in ',"\n\r'):
        texts = [_quote(text) for text in texts]
        joined = "\0".join(texts)
    # One encode and split instead of one call per category (there can be millions of ids).
    encoded = [*joined.encode().split(b"\0"), b""] if texts else [b""]
    table = np.array(encoded, dtype=bytes)
    width = max(1, table.dtype.itemsize)
    return np.frombuffer(table.astype(f"S{width}").tobytes(), np.uint8).reshape(len(encoded), width)


def _format_block(prepared: list[_Column], start: int, stop: int, decimals: int) -> bytes:
    n = stop - start
    parts: list[np.ndarray] = []
    for position, column in enumerate(prepared):
        if position:
            parts.append(np.full((n, 1), ord(","), dtype=np.uint8))
        chunk = column.values[start:stop]
        if column.table is not None:
            # Missing values (code -1) map to the empty last row of the table.
            parts.append(column.table[chunk])
        elif column.kind == "int":
            parts.append(_integer_bytes(chunk))
        else:
            parts.append(_float_bytes(chunk, decimals))
    parts.append(np.full((n, 1), ord("\n"), dtype=np.uint8))
    matrix = np.concatenate(parts, axis=1).ravel()
    return matrix[matrix != _NUL].tobytes()


def _digits(magnitude: np.ndarray, width: int) -> np.ndarray:
    """(n, width) matrix of the decimal digits of non-negative int64 values, most significant
    first (one divmod per column: faster than broadcasting over powers of ten)."""
    digits = np.empty((len(magnitude), width), dtype=np.uint8)
    remaining = magnitude.astype(np.int64)
    for column in range(width - 1, -1, -1):
        remaining, digit = np.divmod(remaining, 10)
        digits[:, column] = digit
    return digits


def _integer_bytes(values: np.ndarray, force_sign: np.ndarray | None = None) -> np.ndarray:
    """Signed integers as a NUL-padded byte matrix (leading zeros dropped, 0 kept)."""
    negative = values < 0 if force_sign is None else force_sign
    magnitude = np.abs(values)
    width = len(str(int(magnitude.max()))) if len(magnitude) else 1
    digits = _digits(magnitude, width)
    # A digit is a leading zero when every digit before it is 0; the last one always stays.
    leading = np.logical_and.accumulate(digits == 0, axis=1)
    leading[:, -1] = False
    text = np.where(leading, _NUL, digits + _ZERO).astype(np.uint8)
    sign = np.where(negative, ord("-"), _NUL).astype(np.uint8)[:, None]
    return np.concatenate([sign, text], axis=1)


def _float_bytes(values: np.ndarray, decimals: int) -> np.ndarray:
    """Fixed-point text with trailing zeros removed; non-finite values written by Python."""
    finite = np.isfinite(values)
    # Beyond 1e12 the scaled integer would overflow int64 at 6 decimals; such values are rare.
    ordinary = finite & (np.abs(values) < 1e12)
    scaled = np.rint(np.where(ordinary, values, 0.0) * 10.0**decimals).astype(np.int64)
    scale = np.int64(10**decimals)
    magnitude = np.abs(scaled)
    integer_part = _integer_bytes(magnitude // scale, force_sign=scaled < 0)
    if decimals > 0:
        fraction = _digits(magnitude % scale, decimals) + _ZERO
        trailing = np.logical_and.accumulate(fraction[:, ::-1] == _ZERO, axis=1)[:, ::-1]
        fraction = np.where(trailing, _NUL, fraction).astype(np.uint8)
        point = np.where(trailing[:, 0], _NUL, ord(".")).astype(np.uint8)[:, None]
        matrix = np.concatenate([integer_part, point, fraction], axis=1)
    else:
        matrix = integer_part
    special = np.flatnonzero(~ordinary)
    if len(special):
        texts = ["" if np.isnan(v) else repr(float(v)) for v in values[special]]
        width = max(matrix.shape[1], max(len(t) for t in texts))
        matrix = np.pad(matrix, ((0, 0), (0, width - matrix.shape[1])))
        matrix[special] = _NUL
        for row, text in zip(special, texts, strict=True):
            matrix[row, : len(text)] = np.frombuffer(text.encode(), np.uint8)
    return matrix


# ---- training results -------------------------------------------------------------------


def global_scores_frame(results: Mapping[str, CriterionResult]) -> dict[str, ColumnValues]:
    """Columns of global_scores.csv over every criterion (video, criteria, score, …)."""
    parts = list(results.values())
    return {
        "video": _stacked_categorical([r.video_ids for r in parts]),
        "criteria": _criterion_column([(r.criterion, len(r.video_ids)) for r in parts]),
        "score": _stacked([r.global_scores for r in parts], np.float64),
        "uncertainty": _stacked([r.global_uncertainty for r in parts], np.float64),
        "n_comparisons": _stacked([r.n_comparisons for r in parts], np.int64),
        "n_contributors": _stacked([r.n_contributors for r in parts], np.int64),
    }


def individual_scores_frame(results: Mapping[str, CriterionResult]) -> dict[str, ColumnValues]:
    """Columns of individual_scores.csv (public_username, video, criteria, score, uncertainty)."""
    parts = list(results.values())
    return {
        "public_username": _stacked_categorical(
            [r.user_ids for r in parts], [r.local_user_index for r in parts]
        ),
        "video": _stacked_categorical(
            [r.video_ids for r in parts], [r.local_video_index for r in parts]
        ),
        "criteria": _criterion_column([(r.criterion, len(r.local_scores)) for r in parts]),
        "score": _stacked([r.local_scores for r in parts], np.float64),
        "uncertainty": _stacked([r.local_uncertainty for r in parts], np.float64),
    }


def history_frame(results: Mapping[str, CriterionResult]) -> pd.DataFrame:
    """One row per criterion and epoch, with the loss terms of that epoch."""
    rows = [
        {
            "criteria": name,
            "epoch": epoch,
            **{key: row.get(key, np.nan) for key in HISTORY_COLUMNS},
        }
        for name, result in results.items()
        for epoch, row in enumerate(result.history, start=1)
    ]
    return pd.DataFrame(rows, columns=["criteria", "epoch", *HISTORY_COLUMNS])


def write_result(
    directory: str | Path,
    results: Mapping[str, CriterionResult],
    config: LicchaviConfig,
) -> Path:
    """Write global_scores.csv, individual_scores.csv, history.csv, config.json and state.pt."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / GLOBAL_SCORES_FILE, global_scores_frame(results))
    write_csv(out / INDIVIDUAL_SCORES_FILE, individual_scores_frame(results))
    history_frame(results).to_csv(out / HISTORY_FILE, index=False, float_format="%.9g")
    # Each criterion's resolved config (device, dtype) is the one that ran; fall back to ours.
    resolved = next(iter(results.values())).config if results else config
    (out / CONFIG_FILE).write_text(json.dumps(resolved.model_dump(mode="json"), indent=2) + "\n")
    write_states(out / STATE_FILE, {name: r.state for name, r in results.items()})
    return out


def write_states(path: str | Path, states: Mapping[str, LicchaviState]) -> None:
    """Save {criterion: state bytes} in torch.save's zip layout, without importing torch.

    The file stays loadable with torch.load(path, weights_only=True) (a protocol-2 pickle of a
    dict of bytes plus the archive's version records), and read_states reads it without torch.
    """
    payload = {name: state.to_bytes() for name, state in states.items()}
    if any(not blob for blob in payload.values()):
        # protocol 2 pickles b"" as a call to bytes(), which weights_only loading refuses
        raise ValueError("state: empty state bytes")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{_STATE_ARCHIVE}/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr(f"{_STATE_ARCHIVE}/byteorder", "little")
        archive.writestr(f"{_STATE_ARCHIVE}/version", "3\n")


class _StateUnpickler(pickle.Unpickler):
    """Allows the one global a protocol-2 pickle of bytes needs, nothing that runs code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


def read_states(path: str | Path) -> dict[str, LicchaviState]:
    """Load the states written by write_states (or by torch.save of the same mapping)."""
    from ml.licchavi import LicchaviState

    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickled) != 1:
                raise ValueError("no data.pkl record")
            payload = _StateUnpickler(io.BytesIO(archive.read(pickled[0]))).load()
    except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a saved state file ({reason})") from error
    if not isinstance(payload, dict) or not all(isinstance(v, bytes) for v in payload.values()):
        raise ValueError(f"{path}: expected a mapping of criterion to state bytes")
    return {str(name): LicchaviState.from_bytes(blob) for name, blob in payload.items()}


def read_scores(directory: str | Path, name: str) -> pd.DataFrame:
    """Read one of the score CSVs written above, ids as strings."""
    return pd.read_csv(
        Path(directory) / name,
        dtype={"video": str, "public_username": str, "criteria": str},
        keep_default_na=False,
        na_values={"score": [""], "uncertainty": [""]},
    )


def _stacked(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays])


def _stacked_categorical(
    id_arrays: list[np.ndarray], index_arrays: list[np.ndarray] | None = None
) -> pd.Categorical[str]:
    """Ids of several criteria as one categorical, without materialising millions of strings."""
    categories: dict[str, int] = {}
    code_parts = []
    for position, ids in enumerate(id_arrays):
        local_codes = np.array([categories.setdefault(str(i), len(categories)) for i in ids])
        local_codes = local_codes.astype(np.int64).reshape(-1)
        if index_arrays is not None:
            local_codes = local_codes[np.asarray(index_arrays[position], dtype=np.int64)]
        code_parts.append(local_codes)
    codes = np.concatenate(code_parts) if code_parts else np.zeros(0, dtype=np.int64)
    return pd.Categorical.from_codes(codes, categories=pd.Index(list(categories)))


def _criterion_column(sizes: list[tuple[str, int]]) -> pd.Categorical[str]:
    names = list(dict.fromkeys(name for name, _ in sizes))
    codes = np.concatenate(
        [np.full(size, names.index(name), dtype=np.int64) for name, size in sizes]
        or [np.zeros(0, dtype=np.int64)]
    )
    return pd.Categorical.from_codes(codes, categories=pd.Index(names))
