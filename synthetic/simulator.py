"""Synthetic cryo-EM micrographs with exact ground truth, written in the CryoTransformer layout.

Physics, per micrograph:
- particles: each dataset has a few species, each a random 3-D density of tens of Gaussian domains
  (with residue-scale Gaussians inside them for high-resolution detail) filling a globule of about
  the particle diameter; every particle is the analytic projection of its species in a uniformly
  random orientation. Particles are placed without overlap, with some touching aggregates, never
  on an ice contaminant (they may sit on carbon).
- pre-CTF projected potential: particles + junk (small dense or light blobs) + carbon film (a
  half-plane with a sharp edge and its own texture) + the phase of ice contaminants + amorphous-ice
  structural noise.
- CTF: -(sqrt(1-A^2) sin(chi) + A cos(chi)) * exp(-B k^2 / 4) with
  chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4, a per-micrograph defocus df (underfocus > 0) and
  the relativistic electron wavelength. It is applied in Fourier space on a padded canvas, so the
  periodic wrap stays outside the micrograph.
- intensity: exp(-absorption) * (1 + contrast), the absorption holding an ice-thickness gradient,
  a smooth low-frequency background, the carbon film and the (nearly opaque) ice contaminants;
  then shot noise whose variance follows the intensity, in electrons per pixel (the dose).
- SNR = variance of the CTF-filtered particle signal over the particles' discs / variance of all
  noise (shot + ice structural noise after the CTF), before any --denoised low-pass. The noise
  level comes from the dose; the SNR sets the particle contrast.
- --denoised (CryoPPP-like JPEGs): a higher default SNR and a Gaussian low-pass.

Output (see `write_dataset`): `{train,val,test}/<stem>.mrc` (float32 electrons per pixel, voxel
size = pixel size) or `.jpg` (uint8), `annotations/instances_<split>.json` (COCO),
`particle_coordinates/<stem>.csv` (CryoPPP) with the labeled particles, `ground_truth/<stem>.csv`
with every particle, and `dataset.json` with the parameters and per-micrograph facts (defocus,
counts, junk positions, carbon). In train only `label_fraction` of the particles are labeled, like
real partial picks; val and test annotations hold every particle because they are for evaluation.

Randomness: micrograph i of split s draws from `default_rng([seed, s, i])` and the species from
`default_rng([seed, SPECIES_STREAM])`, so the files do not depend on the number of workers.
"""
import json
import multiprocessing
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path

import mrcfile
import numpy as np
from PIL import Image
from scipy import fft
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation
from threadpoolctl import threadpool_limits

from common.errors import InputError
from datasets.io.coordinates import make_particles, write_coco, write_cryoppp_csv
from datasets.io.layout import SPLITS
from datasets.io.micrographs import normalize_to_uint8

SPECIES_STREAM = len(SPLITS)      # the species' random stream, after the three splits' streams
RSA_JAMMING_LIMIT = 0.547         # densest cover random sequential placement of discs reaches
MIN_SEPARATION = 0.95             # particle centres at least this many diameters apart
ICE_NOISE_SHARE = 0.5             # share of the noise variance that is ice structure (pre-CTF)
CARBON_TEXTURE = 0.4              # carbon adds this much again to the ice structure noise (std)
CARBON_PHASE = 0.4                # carbon film projected potential, in mean particle densities
CONTAMINANT_PHASE = 1.5           # ice contaminant projected potential at its centre, same units
CONTAMINANT_OPACITY = (0.3, 1.0)  # contaminant absorption at its centre (beam = exp(-opacity))
CARBON_ABSORPTION = (0.01, 0.02)  # absorption of the carbon film
ICE_GRADIENT = (0.005, 0.02)      # absorption change across the micrograph (ice thickness)
ICE_BACKGROUND = 0.002            # std of the smooth low-frequency absorption background
RESIDUE_SIGMA_A = 3.0             # residue-scale detail inside the domains, in Angstrom
RESIDUES_PER_DOMAIN = 5
RESIDUE_MASS = 0.5                # residue-scale mass per unit of domain mass
RAW_SNR = 0.1                     # default SNR: particles faint, like a binned raw micrograph
DENOISED_SNR = 0.2                # default with --denoised: particles as distinct as in CryoPPP JPEGs
DENOISE_SIGMA = 1 / 12            # --denoised low-pass: Gaussian sigma in particle diameters
JPEG_QUALITY = 92
MRC_LABEL = b"synthetic micrograph, make_synthetic_dataset.py"


@dataclass(frozen=True)
class SyntheticConfig:
    """Every generator parameter; field `foo_bar` is the command-line option `--foo-bar`."""
    num_train: int = 8
    num_val: int = 2
    num_test: int = 2
    width: int = 1024                 # px
    height: int = 1024                # px
    pixel_size: float = 3.0           # Angstrom per pixel (a 4k micrograph binned ~3x)
    diameter: float = 40.0            # particle diameter, px (120 A, apoferritin-sized)
    density: float = 0.15             # fraction of the micrograph covered by particle discs
    num_species: int = 3
    aggregate_fraction: float = 0.1   # chance that a particle is placed touching an earlier one
    snr: float | None = None          # default RAW_SNR, or DENOISED_SNR when denoised
    dose: float = 40.0                # electrons per A^2
    defocus_min: float = 1.0          # um, underfocus
    defocus_max: float = 2.5          # um
    voltage: float = 300.0            # kV
    cs: float = 2.7                   # mm
    amplitude_contrast: float = 0.07
    b_factor: float = 100.0           # A^2
    label_fraction: float = 0.7       # share of train particles written to the annotations
    contaminants: float = 0.8         # mean ice contaminants per micrograph (Poisson)
    carbon_fraction: float = 0.25     # share of micrographs showing a carbon-film edge
    junk: float = 15.0                # mean junk blobs per micrograph (Poisson)
    denoised: bool = False            # CryoPPP-like: higher SNR, low-pass filtered, JPEG
    format: str | None = None         # mrc | jpg; default jpg when denoised, else mrc
    seed: int = 0

    @property
    def signal_to_noise(self):
        if self.snr is not None:
            return self.snr
        return DENOISED_SNR if self.denoised else RAW_SNR

    @property
    def file_format(self):
        return self.format or ("jpg" if self.denoised else "mrc")

    def split_counts(self):
        return dict(zip(SPLITS, (self.num_train, self.num_val, self.num_test)))

    def particles_per_micrograph(self):
        return int(round(self.density * self.width * self.height / (np.pi * self.diameter ** 2 / 4)))


def _option(name):
    return "--" + {"signal_to_noise": "snr"}.get(name, name).replace("_", "-")


_RANGES = {  # name: (low, high, low inclusive, high inclusive)
    "num_train": (1, None, True, True), "num_val": (0, None, True, True),
    "num_test": (0, None, True, True), "width": (16, None, True, True),
    "height": (16, None, True, True), "pixel_size": (0, None, False, True),
    "diameter": (2, None, True, True), "density": (0, RSA_JAMMING_LIMIT, False, True),
    "num_species": (1, None, True, True), "aggregate_fraction": (0, 1, True, False),
    "signal_to_noise": (0, None, False, True), "dose": (0, None, False, True),
    "defocus_min": (0, None, False, True), "defocus_max": (0, None, False, True),
    "voltage": (0, None, False, True), "cs": (0, None, True, True),
    "amplitude_contrast": (0, 1, True, False), "b_factor": (0, None, True, True),
    "label_fraction": (0, 1, True, True), "contaminants": (0, None, True, True),
    "carbon_fraction": (0, 1, True, True), "junk": (0, None, True, True),
}


def _range_text(low, high, low_inclusive, high_inclusive):
    left = ">=" if low_inclusive else ">"
    if high is None:
        return f"{left} {low}"
    return f"in {'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"


def validate(config):
    """Raise InputError, naming the option and the fix, for a parameter the generator cannot use."""
    for name, (low, high, low_inclusive, high_inclusive) in _RANGES.items():
        value = getattr(config, name)
        too_low = value < low if low_inclusive else value <= low
        too_high = high is not None and (value > high if high_inclusive else value >= high)
        if too_low or too_high:
            extra = " (denser random packing cannot be placed)" if name == "density" else ""
            raise InputError(f"{_option(name)} {value} must be "
                             f"{_range_text(low, high, low_inclusive, high_inclusive)}{extra}")
    if config.diameter >= min(config.width, config.height) / 2:
        raise InputError(f"--particle-diameter {config.diameter} px does not fit a {config.width}x{config.height} "
                         f"micrograph; use a diameter below {min(config.width, config.height) / 2:g} px "
                         f"or a larger --width/--height")
    if config.defocus_min > config.defocus_max:
        raise InputError(f"--defocus-min {config.defocus_min} is above --defocus-max {config.defocus_max}; "
                         f"swap them")
    if config.file_format not in ("mrc", "jpg"):
        raise InputError(f"--format {config.format} is not supported; use mrc or jpg")
    if config.particles_per_micrograph() < 1:
        raise InputError(f"--density {config.density} gives no particle in a {config.width}x{config.height} "
                         f"micrograph; raise --density")


# ----------------------------------------------------------------------------- optics

def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Angstrom for an accelerating voltage in kV."""
    volts = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf(k2, defocus_um, voltage_kv, cs_mm, amplitude_contrast, b_factor):
    """CTF with B-factor envelope at squared spatial frequencies `k2` (1/A^2); underfocus > 0."""
    wavelength = electron_wavelength(voltage_kv)
    chi = (np.pi * wavelength * defocus_um * 1e4 * k2
           - 0.5 * np.pi * cs_mm * 1e7 * wavelength ** 3 * k2 ** 2)
    # sqrt(1 - A^2) sin(chi) + A cos(chi) = sin(chi + arcsin(A))
    return -np.sin(chi + np.arcsin(amplitude_contrast)) * np.exp(-b_factor * k2 / 4)


def _apply_ctf(image, transfer):
    return fft.irfft2(fft.rfft2(image) * transfer, s=image.shape)


def _transfer(shape, defocus_um, config):
    k_rows = fft.fftfreq(shape[0], d=config.pixel_size).astype(np.float32)[:, None]
    k_cols = fft.rfftfreq(shape[1], d=config.pixel_size).astype(np.float32)[None, :]
    return ctf(k_rows ** 2 + k_cols ** 2, defocus_um, config.voltage, config.cs,
               config.amplitude_contrast, config.b_factor)


def _white_noise_gain(transfer, width):
    """Variance of unit white noise after filtering by `transfer` (an rfft2 half-plane)."""
    weights = np.full(transfer.shape[1], 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return float(np.sum(transfer ** 2 * weights) / (transfer.shape[0] * width))


# ----------------------------------------------------------------------------- species

@dataclass
class Species:
    """A particle's 3-D density: Gaussians at `centres` (J, 3) px, widths (J,) px, masses (J,)."""
    centres: np.ndarray
    sigmas: np.ndarray
    masses: np.ndarray


def _points_in_ball(rng, count):
    direction = rng.standard_normal((count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * rng.random((count, 1)) ** (1 / 3)


def make_species(rng, config):
    """`num_species` random globular densities of about `diameter`, mean disc density 1."""
    radius = config.diameter / 2
    residue_sigma = max(RESIDUE_SIGMA_A / config.pixel_size, 0.7)
    species = []
    for _ in range(config.num_species):
        n_domains = int(rng.integers(30, 81))
        semi_axes = radius * rng.uniform(0.85, 1.0, 3)
        domain_sigma = radius * rng.uniform(0.15, 0.25, n_domains)
        domains = _points_in_ball(rng, n_domains) * np.maximum(semi_axes - domain_sigma[:, None], 0)
        residues = (np.repeat(domains, RESIDUES_PER_DOMAIN, axis=0)
                    + rng.standard_normal((n_domains * RESIDUES_PER_DOMAIN, 3))
                    * np.repeat(domain_sigma, RESIDUES_PER_DOMAIN)[:, None])
        domain_mass = domain_sigma ** 3
        residue_mass = np.repeat(domain_mass, RESIDUES_PER_DOMAIN) / RESIDUES_PER_DOMAIN * RESIDUE_MASS
        masses = np.concatenate([domain_mass, residue_mass])
        masses *= np.pi * radius ** 2 / masses.sum()
        species.append(Species(centres=np.concatenate([domains, residues]),
                               sigmas=np.concatenate([domain_sigma, np.full(len(residues), residue_sigma)]),
                               masses=masses))
    return species


def _random_rotation(rng):
    """A uniformly random rotation matrix (a normalised Gaussian quaternion)."""
    return Rotation.from_quat(rng.standard_normal(4)).as_matrix()


def add_gaussians(canvas, xy, sigmas, masses):
    """Add 2-D Gaussians (centres `xy` (J, 2) as x, y in canvas pixels) of total masses `masses`.

    Separable: one (J, rows) and one (J, cols) table and a matrix product, so a particle of a few
    hundred Gaussians costs well under a millisecond.
    """
    reach = 3.5 * sigmas.max()
    row0 = max(int(np.floor(xy[:, 1].min() - reach)), 0)
    row1 = min(int(np.ceil(xy[:, 1].max() + reach)) + 1, canvas.shape[0])
    col0 = max(int(np.floor(xy[:, 0].min() - reach)), 0)
    col1 = min(int(np.ceil(xy[:, 0].max() + reach)) + 1, canvas.shape[1])
    if row0 >= row1 or col0 >= col1:
        return
    xy = xy.astype(np.float32)
    inv = (-0.5 / sigmas[:, None] ** 2).astype(np.float32)
    along_rows = np.exp((np.arange(row0, row1, dtype=np.float32)[None, :] - xy[:, 1:2]) ** 2 * inv)
    along_cols = np.exp((np.arange(col0, col1, dtype=np.float32)[None, :] - xy[:, 0:1]) ** 2 * inv)
    along_rows *= (masses / (2 * np.pi * sigmas ** 2)).astype(np.float32)[:, None]
    canvas[row0:row1, col0:col1] += along_rows.T @ along_cols


def project(species, rotation, x, y, canvas):
    """Add the projection along z of `species` turned by `rotation`, centred at canvas (x, y)."""
    turned = species.centres @ rotation.T
    add_gaussians(canvas, turned[:, :2] + (x, y), species.sigmas, species.masses)


# ----------------------------------------------------------------------------- layout

def _window(shape, x, y, radius):
    """Slices of the canvas around (x, y) and the offsets (dy, dx) of their pixels from it."""
    row0, row1 = max(int(y - radius), 0), min(max(int(y + radius) + 2, 0), shape[0])
    col0, col1 = max(int(x - radius), 0), min(max(int(x + radius) + 2, 0), shape[1])
    dy = np.arange(row0, row1)[:, None] - y
    dx = np.arange(col0, col1)[None, :] - x
    return (slice(row0, row1), slice(col0, col1)), dy, dx


def _sphere_thickness(canvas, x, y, radius, scale=1.0):
    """Add `scale` x the projected thickness of a sphere, normalised to 1 at its centre."""
    window, dy, dx = _window(canvas.shape, x, y, radius)
    canvas[window] += scale * np.sqrt(np.clip(1 - (dx ** 2 + dy ** 2) / radius ** 2, 0, None))


def _contaminants(rng, config):
    """Ice contaminants, each a list of (x, y, radius) spheres: a body and 2-6 smaller lobes."""
    blobs = []
    for _ in range(rng.poisson(config.contaminants)):
        x, y = rng.uniform(0, config.width), rng.uniform(0, config.height)
        radius = config.diameter * rng.uniform(1.0, 2.5)
        parts = [(x, y, radius)]
        for _ in range(rng.integers(2, 7)):
            angle = rng.uniform(0, 2 * np.pi)
            shift = radius * rng.uniform(0.5, 1.0)
            lobe = radius * rng.uniform(0.25, 0.6)
            parts.append((x + shift * np.cos(angle), y + shift * np.sin(angle), lobe))
        blobs.append(parts)
    return blobs


def _candidate(rng, config, placed):
    """A uniform position, or with probability aggregate_fraction one touching a placed particle."""
    radius = config.diameter / 2
    if len(placed) and rng.random() < config.aggregate_fraction:
        angle = rng.uniform(0, 2 * np.pi)
        distance = config.diameter * rng.uniform(MIN_SEPARATION, 1.0)
        return placed[rng.integers(len(placed))] + distance * np.array([np.cos(angle), np.sin(angle)])
    return rng.uniform((radius, radius), (config.width - radius, config.height - radius))


def _fits(candidate, config, placed, blocked):
    """Inside the micrograph, clear of placed particles and of the blocked discs (x, y, radius)."""
    radius = config.diameter / 2
    x, y = candidate
    if not (radius <= x <= config.width - radius and radius <= y <= config.height - radius):
        return False
    nearest = np.min(np.sum((placed - candidate) ** 2, axis=1)) if len(placed) else np.inf
    if nearest < (MIN_SEPARATION * config.diameter) ** 2:
        return False
    return not np.any(np.sum((blocked[:, :2] - candidate) ** 2, axis=1) < (blocked[:, 2] + radius) ** 2)


def place_particles(rng, config, blocked):
    """Centres (N, 2) x, y of non-overlapping particles; `blocked` (K, 3) x, y, radius excluded.

    Random sequential placement, some particles touching earlier ones (aggregates). Raises
    InputError when `particles_per_micrograph` cannot be placed in 200 tries per particle.
    """
    count = config.particles_per_micrograph()
    centres = np.empty((count, 2))
    placed = 0
    for _ in range(200 * count + 1000):
        candidate = _candidate(rng, config, centres[:placed])
        if _fits(candidate, config, centres[:placed], blocked):
            centres[placed] = candidate
            placed += 1
            if placed == count:
                return centres
    raise InputError(f"--density {config.density}: only {placed} of {count} particles of "
                     f"{config.diameter:g} px fit a {config.width}x{config.height} micrograph beside "
                     f"the contaminants; "
                     f"lower --density, --particle-diameter or --contaminants")


def _junk(rng, config, centres):
    """Junk blobs: (x, y, [Gaussians as (dx, dy, sigma, mass)]) away from every particle."""
    junk, diameter = [], config.diameter
    for _ in range(rng.poisson(config.junk)):
        sigma = diameter * rng.uniform(0.08, 0.18)
        n_parts = int(rng.integers(1, 5))
        parts = np.column_stack([rng.standard_normal((n_parts, 2)) * sigma,
                                 sigma * rng.uniform(0.6, 1.0, n_parts),
                                 np.full(n_parts, 1.0 / n_parts)])
        sign = 1 if rng.random() < 0.8 else -1
        parts[:, 3] *= sign * rng.uniform(0.3, 0.8) * np.pi * (diameter / 2) ** 2  # of a particle's mass
        for _ in range(20):
            x, y = rng.uniform(0, config.width), rng.uniform(0, config.height)
            if np.min(np.hypot(centres[:, 0] - x, centres[:, 1] - y)) > diameter / 2 + 4 * sigma:
                junk.append((x, y, parts))
                break
    return junk


def _carbon(rng, config, pad, shape):
    """Carbon film as a soft-edged half-plane mask over the padded canvas, or None."""
    if rng.random() >= config.carbon_fraction:
        return None
    angle = rng.uniform(0, 2 * np.pi)
    rows = np.arange(shape[0], dtype=np.float32)[:, None] - pad
    cols = np.arange(shape[1], dtype=np.float32)[None, :] - pad
    distance = cols * np.cos(angle) + rows * np.sin(angle)
    inside = distance[pad:pad + config.height:8, pad:pad + config.width:8]
    edge = np.quantile(inside, 1 - rng.uniform(0.1, 0.35))
    return np.clip(distance - edge + 0.5, 0, 1)  # a sharp edge, anti-aliased over one pixel


# ----------------------------------------------------------------------------- image formation

@dataclass
class Micrograph:
    """One generated micrograph and its exact truth (coordinates in its pixels, x = column)."""
    image: np.ndarray          # float32 (H, W): electrons per pixel, or low-passed when denoised
    centres: np.ndarray        # (N, 2) x, y of every particle
    labeled: np.ndarray        # (N,) bool: written to the annotations
    species: np.ndarray        # (N,) int
    defocus_um: float
    contaminants: int
    junk: np.ndarray           # (K, 2) x, y of junk blobs
    carbon: bool


def _disc_mask(shape, centres, radius):
    mask = np.zeros(shape, dtype=bool)
    for x, y in centres:
        window, dy, dx = _window(shape, x, y, radius)
        mask[window] |= dx ** 2 + dy ** 2 <= radius ** 2
    return mask


def _smooth_field(rng, config, cells=8):
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(coarse, mode="F").resize((config.width, config.height),
                                                     Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float64)


def _absorption(rng, config, scene):
    """Exponent of the beam attenuation: ice gradient, background, carbon, contaminants."""
    angle = rng.uniform(0, 2 * np.pi)
    rows = np.arange(config.height)[:, None] / config.height - 0.5
    cols = np.arange(config.width)[None, :] / config.width - 0.5
    absorption = rng.uniform(*ICE_GRADIENT) * (cols * np.cos(angle) + rows * np.sin(angle))
    absorption = absorption + ICE_BACKGROUND * _smooth_field(rng, config)
    if scene.carbon is not None:
        absorption += rng.uniform(*CARBON_ABSORPTION) * scene.crop(scene.carbon)
    for parts in scene.blobs:
        opacity = rng.uniform(*CONTAMINANT_OPACITY)
        for x, y, radius in parts:
            _sphere_thickness(absorption, x, y, radius, opacity)
    return absorption


@dataclass
class _Scene:
    """What lies on one micrograph before imaging; the canvas is the micrograph padded by `pad`."""
    height: int
    width: int
    pad: int
    shape: tuple
    centres: np.ndarray
    kinds: np.ndarray
    blobs: list
    junk: list
    carbon: np.ndarray | None

    def crop(self, canvas):
        return canvas[self.pad:self.pad + self.height, self.pad:self.pad + self.width]


def _scene(rng, config):
    """Contaminants, then particles around them, then junk around the particles, then carbon."""
    pad = int(np.ceil(config.diameter))
    shape = (fft.next_fast_len(config.height + 2 * pad, real=True),
             fft.next_fast_len(config.width + 2 * pad, real=True))
    blobs = _contaminants(rng, config)
    blocked = np.array([part for parts in blobs for part in parts]).reshape(-1, 3)
    centres = place_particles(rng, config, blocked)
    kinds = rng.integers(config.num_species, size=len(centres))
    junk = _junk(rng, config, centres)
    carbon = _carbon(rng, config, pad, shape)
    return _Scene(config.height, config.width, pad, shape, centres, kinds, blobs, junk, carbon)


def _potential(rng, config, species, scene):
    """Pre-CTF projected potential on the canvas: (particles, junk + contaminants + carbon)."""
    pad = scene.pad
    particles = np.zeros(scene.shape)
    for (x, y), kind in zip(scene.centres, scene.kinds):
        project(species[kind], _random_rotation(rng), x + pad, y + pad, particles)
    other = np.zeros(scene.shape)
    for x, y, parts in scene.junk:
        add_gaussians(other, parts[:, :2] + (x + pad, y + pad), parts[:, 2], parts[:, 3])
    for parts in scene.blobs:
        for x, y, radius in parts:
            _sphere_thickness(other, x + pad, y + pad, radius, CONTAMINANT_PHASE)
    if scene.carbon is not None:
        other += CARBON_PHASE * scene.carbon
    return particles, other


def _contrast(rng, config, scene, defocus, particles, other):
    """CTF-filtered contrast: particles scaled to the SNR, plus the rest and ice structure noise."""
    transfer = _transfer(scene.shape, defocus, config)
    signal = scene.crop(_apply_ctf(particles, transfer))
    footprint = _disc_mask(signal.shape, scene.centres, config.diameter / 2)
    noise_sigma = 1 / np.sqrt(config.dose * config.pixel_size ** 2)
    gain = noise_sigma * np.sqrt(config.signal_to_noise / signal[footprint].var())
    ice = rng.standard_normal(scene.shape) * (
        noise_sigma * np.sqrt(ICE_NOISE_SHARE / _white_noise_gain(transfer, scene.shape[1])))
    if scene.carbon is not None:
        ice *= 1 + CARBON_TEXTURE * scene.carbon
    return gain * signal + scene.crop(_apply_ctf(gain * other + ice, transfer))


def _labeled(rng, config, split_index, count):
    """Which particles go to the annotations: a seeded label_fraction in train, all elsewhere."""
    if split_index != 0:
        return np.ones(count, dtype=bool)
    labeled = np.zeros(count, dtype=bool)
    labeled[rng.choice(count, int(round(config.label_fraction * count)), replace=False)] = True
    return labeled


def generate_micrograph(config, species, split_index, index):
    """Micrograph `index` of split `split_index`, drawn from default_rng([seed, split, index]).

    Runs on one core: the many small matrix products of `add_gaussians` are far slower when BLAS
    spreads them over threads, and parallelism belongs to the micrograph level (`--num-workers`).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _generate(config, species, split_index, index)


def _generate(config, species, split_index, index):
    rng = np.random.default_rng([config.seed, split_index, index])
    defocus = float(rng.uniform(config.defocus_min, config.defocus_max))
    scene = _scene(rng, config)
    particles, other = _potential(rng, config, species, scene)
    contrast = _contrast(rng, config, scene, defocus, particles, other)
    beam = np.exp(-_absorption(rng, config, scene))
    electrons = config.dose * config.pixel_size ** 2
    shot = rng.standard_normal(beam.shape) * np.sqrt((1 - ICE_NOISE_SHARE) * beam / electrons)
    image = (beam * (1 + contrast) + shot) * electrons
    if config.denoised:
        image = gaussian_filter(image, DENOISE_SIGMA * config.diameter)
    return Micrograph(image=image.astype(np.float32), centres=scene.centres,
                      labeled=_labeled(rng, config, split_index, len(scene.centres)), species=scene.kinds,
                      defocus_um=defocus, contaminants=len(scene.blobs),
                      junk=np.array([(x, y) for x, y, _ in scene.junk]).reshape(-1, 2),
                      carbon=scene.carbon is not None)


# ----------------------------------------------------------------------------- files

def stem_of(split, index):
    """File stem of micrograph `index` of `split`, unique across splits."""
    return f"synthetic_{split}_{index:03d}"


def save_micrograph(path, image, config):
    """Write `image` as float32 MRC (voxel size = pixel size, fixed label) or uint8 JPEG."""
    if config.file_format == "mrc":
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(image)
            mrc.voxel_size = config.pixel_size
            mrc.header.label[0] = MRC_LABEL
    else:
        Image.fromarray(normalize_to_uint8(image)).save(path, quality=JPEG_QUALITY)


def _table(micrograph, config, which):
    centres = micrograph.centres[which]
    return make_particles(centres[:, 0], centres[:, 1], config.diameter)


def _render_and_save(task, config, species, out):
    """Worker: generate one micrograph, write its image and CSVs, return its facts."""
    split_index, index = task
    split, stem = SPLITS[split_index], stem_of(SPLITS[split_index], index)
    micrograph = generate_micrograph(config, species, split_index, index)
    file_name = f"{stem}.{config.file_format}"
    save_micrograph(out / split / file_name, micrograph.image, config)
    labeled = _table(micrograph, config, micrograph.labeled)
    write_cryoppp_csv(out / "particle_coordinates" / f"{stem}.csv", labeled)
    write_cryoppp_csv(out / "ground_truth" / f"{stem}.csv", _table(micrograph, config, slice(None)))
    facts = {"stem": stem, "split": split, "file_name": file_name, "width": config.width,
             "height": config.height, "defocus_um": micrograph.defocus_um,
             "particles": len(micrograph.centres), "labeled": int(micrograph.labeled.sum()),
             "contaminants": micrograph.contaminants, "junk": len(micrograph.junk),
             "junk_xy": np.round(micrograph.junk, 1).tolist(), "carbon": micrograph.carbon}
    return facts, labeled


def _run_tasks(tasks, worker, num_workers):
    if num_workers <= 1:
        return [worker(task) for task in tasks]
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        return list(pool.imap(worker, tasks))


def _remove_previous(out):
    """Delete the files of an earlier synthetic dataset in `out`, so none is left stale.

    Only files listed in its dataset.json are removed; any other content is refused, since the
    preprocessors would read stray micrographs as part of the dataset.
    """
    if not out.exists() or not any(out.iterdir()):
        return
    summary_path = out / "dataset.json"
    if not summary_path.is_file():
        raise InputError(f"--out {out} is not empty and holds no synthetic dataset (dataset.json); "
                         f"choose a new or empty folder")
    try:
        listed = [(facts["split"], facts["file_name"], facts["stem"])
                  for facts in json.loads(summary_path.read_text())["micrographs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{summary_path} is not a dataset.json this tool wrote ({exc}); choose a new or empty "
                         f"--out folder") from exc
    paths = [path for split, name, stem in listed
             for path in (out / split / name, out / "particle_coordinates" / f"{stem}.csv",
                          out / "ground_truth" / f"{stem}.csv")]
    inside = [path for path in paths if path.resolve().parent.parent == out.resolve()
              and path.resolve().parent.name in (*SPLITS, "particle_coordinates", "ground_truth")]
    if len(inside) != len(paths):
        stray = next(path for path in paths if path not in inside)
        raise InputError(f"{summary_path} lists {stray}, outside the dataset's own folders; it was not written by "
                         f"this tool: choose a new or empty --out folder")
    for path in inside:
        path.unlink(missing_ok=True)


def write_dataset(config, out, num_workers=1):
    """Write the dataset under `out` (layout in the module docstring); return dataset.json's dict."""
    validate(config)
    if num_workers < 1:
        raise InputError(f"--num-workers {num_workers} must be >= 1")
    out = Path(out)
    _remove_previous(out)
    for folder in (*SPLITS, "annotations", "particle_coordinates", "ground_truth"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    species = make_species(np.random.default_rng([config.seed, SPECIES_STREAM]), config)
    tasks = [(s, i) for s, split in enumerate(SPLITS) for i in range(config.split_counts()[split])]
    worker = partial(_render_and_save, config=config, species=species, out=out)
    results = _run_tasks(tasks, worker, num_workers)
    for split in SPLITS:
        mine = [(facts, labeled) for facts, labeled in results if facts["split"] == split]
        images = {f["stem"]: {"id": i, **{key: f[key] for key in ("file_name", "width", "height")}}
                  for i, (f, _) in enumerate(mine)}
        write_coco(out / "annotations" / f"instances_{split}.json",
                   {f["stem"]: labeled for f, labeled in mine}, images)
    micrographs = [facts for facts, _ in results]
    summary = {
        "generator": "make_synthetic_dataset.py",
        "config": asdict(replace(config, format=config.file_format, snr=config.signal_to_noise)),
        "annotations": "train: a seeded label_fraction of the particles; val and test: every particle "
                       "(for evaluation); ground_truth/ holds every particle of every split",
        "species_seed": [config.seed, SPECIES_STREAM],
        "counts": {split: {key: sum(m[key] for m in micrographs if m["split"] == split)
                           for key in ("particles", "labeled", "contaminants", "junk")}
                   | {"micrographs": sum(m["split"] == split for m in micrographs)} for split in SPLITS},
        "micrographs": micrographs,
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=1))
    return summary


def config_from_args(args):
    """A SyntheticConfig from an argparse namespace whose attributes are named like its fields."""
    return SyntheticConfig(**{f.name: getattr(args, f.name) for f in fields(SyntheticConfig)})
