"""`genlab compare`'s default settings, as plain constants: the command line reads them without importing
torch (`genlab compare --help` stays instant)."""

from genlab.models.specs import TEXT_FAMILIES

DEFAULT_BUDGET_SECONDS = 60.0  # a quick first look; the report says so
DEFAULT_STEPS_GRID = (5, 10, 20, 50)  # sampling steps of the quality-vs-steps curve
DEFAULT_FAMILIES = ("diffusion", "gan", "vae", "pixelcnn", "rbm")
DEFAULT_TEXT_FAMILIES = TEXT_FAMILIES  # on a text corpus (pydocs, text:PATH)
