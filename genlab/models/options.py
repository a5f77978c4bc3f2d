"""What a family's `sample(n, **options)` accepts, declared as data, and the units of its likelihood.

Pure data (no torch): the command line builds `genlab sample`'s flags from these declarations
(`cli/sample.py`), and a web page can build its form from them, without importing a model.
Each family declares its options in its spec module (`models/specs/<family>.py`, `SAMPLE_OPTIONS`);
the model checks what it is given with `SampleOption.check`.
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.errors import ConfigError


@dataclass(frozen=True)
class SampleOption:
    """One keyword option of `sample`: its name, type, bounds and help, as the CLI and a form offer it.

    Args:
        name: the keyword of `sample` (e.g. "steps").
        type: int, float or str.
        help: one line; the command line prefixes it with the families that have the option.
        flag: the command-line flag (default: "--" + name with "_" as "-").
        choices: the allowed values of a str option (empty: any value the model accepts).
        minimum, maximum: bounds of a number (None: unbounded); they bound the work of one request.
        exclusive_minimum: the value must exceed `minimum` (a temperature > 0) rather than reach it.
    """

    name: str
    type: type
    help: str
    flag: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False

    @property
    def cli_flag(self) -> str:
        """The command-line flag of this option."""
        return self.flag or "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What the option takes, in words: "a positive integer up to 10000"."""
        number = "integer" if self.type is int else "number"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type not in (int, float):
            return "a name"
        if self.minimum == 0 and self.exclusive_minimum or self.minimum == 1 and self.type is int:
            text = f"a positive {number}"
        elif self.minimum is None:
            text = f"a{'n' if number == 'integer' else ''} {number}"
        else:
            text = f"a{'n' if number == 'integer' else ''} {number} {'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        return text + (f" up to {self.maximum:g}" if self.maximum is not None else "")

    def check(self, value):
        """`value` converted to the option's type, or a ConfigError naming the flag and what it takes."""
        try:
            converted = self.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.cli_flag} expects {self.describe()}, got {value!r}") from None
        low = self.minimum is not None and (converted <= self.minimum if self.exclusive_minimum
                                            else converted < self.minimum)
        high = self.maximum is not None and converted > self.maximum
        if low or high or self.choices and converted not in self.choices:
            raise ConfigError(f"{self.cli_flag} expects {self.describe()}, got {converted}")
        return converted


SAMPLER = SampleOption("sampler", str, "sampler name (see `genlab list`); default: the run's")
STEPS = SampleOption("steps", int, "sampling steps; default: the run's", minimum=1)
GIBBS_SWEEPS = SampleOption("steps", int, "Gibbs sweeps; default: the run's", minimum=1)
LABEL = SampleOption("label", int, "class label of a class-conditional model", flag="--class", minimum=0)
GUIDANCE = SampleOption("guidance", float, "classifier-free guidance scale (1 = the conditional model, "
                        "0 = unconditional; default 1)")
TEMPERATURE = SampleOption("temperature", float, "sampling temperature; default: the run's", minimum=0.0,
                           exclusive_minimum=True)

PROMPT = SampleOption("prompt", str, "text the generated text continues (default: none, start of a document)")
MAX_NEW_TOKENS = SampleOption("max_new_tokens", int, "tokens to generate; default: the run's", minimum=1,
                              maximum=100_000)
TOP_K = SampleOption("top_k", int, "draw only from the k most probable tokens (default: the run's)", minimum=1)
TOP_P = SampleOption("top_p", float, "nucleus sampling: draw from the most probable tokens whose probability "
                     "reaches p (default: the run's)", minimum=0.0, maximum=1.0, exclusive_minimum=True)
TEXT_STEPS = SampleOption("steps", int, "denoising steps; default: the run's", minimum=1, maximum=100_000)


def options_by_name(options: tuple[SampleOption, ...]) -> dict[str, SampleOption]:
    """{name: option} of a family's declaration."""
    return {o.name: o for o in options}


#: the units of bits per dimension. Pixels: 8-bit levels (discrete, or dequantised), or binarised
#: (one Bernoulli variable per pixel: far fewer bits than 8-bit levels, not comparable with them);
#: the continuous density of vectors or pixel values (can be negative); text: bits per character or
#: per token of the model's tokenizer. `genlab compare` ranks bits only between families of one unit.
BPD_8BIT, BPD_BINARY, BPD_CONTINUOUS = "8-bit pixels", "binarised pixels", "continuous density"
BITS_PER_CHAR, BITS_PER_TOKEN = "bits/char", "bits/token"
BPD_UNITS = (BPD_8BIT, BPD_BINARY, BPD_CONTINUOUS, BITS_PER_CHAR, BITS_PER_TOKEN)

#: the units a family may report for each modality
UNITS_OF_MODALITY = {"image": (BPD_8BIT, BPD_BINARY, BPD_CONTINUOUS), "vector": (BPD_CONTINUOUS,),
                     "tokens": (BITS_PER_CHAR, BITS_PER_TOKEN)}
