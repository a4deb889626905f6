"""Where images come from: a registry of domains, the way timm registers models.

A domain is one module of this package that builds a :class:`Domain` and passes it to
:func:`register_domain`; ``params.yaml``'s ``profile`` names it, and every stage looks it up with
:func:`domain_for` instead of branching on the profile. Registered here: ``embedded`` (the built-in
digits, :mod:`sda.domains.embedded`), ``imagenet`` (:mod:`sda.domains.imagenet`) and ``folder``
(your own labelled images, :mod:`sda.domains.folder`).

Adding a domain is adding a module to this package that registers itself (every module here is
imported with the package but the support modules :mod:`sda.plugins` lists) and its section to
``params.yaml``; what a stage needs from it:

- ``description``: a few words for people (deployments, ``--help``);
- ``params_model``: its own params section (a :class:`sda.config.Section`), ``params.yaml``'s
  top-level key named like the domain (and its module), validated by it when the registry reads the
  params (:func:`domain_for`) or a stage reads the section (``params.<name>``);
- ``sections``: the params sections it reads (recorded with the source data);
- ``image_size(params)``: the side of the images the diffusion models see;
- ``write_source(params, out)``: the ``source_data`` stage's folder (shard sets ``train`` / ``val`` /
  ``test`` as the domain has them, ``classes.json`` with the class ``names``);
- ``write_targets(params, source_dir, out)``: the ``target_data`` stage's folder (one shard set per
  target domain, ``domains.json``);
- ``source_classifier(params)``: ``None`` to train ``source_model.arch`` on the source train split,
  or the :class:`PretrainedClassifier` to load;
- ``pretrained_diffusion(params)``: ``None`` (a class-conditional UNet trained on the source, also
  the projector), or the :class:`PretrainedDiffusion` the projector and generator start from (the
  params section naming them, a new DiT class table or ImageNet's, the size they work at);
- ``severities(params)``: the corruption severities its numbers are measured at;
- ``check(params)``: what the domain needs of the params beyond their shape (raise ``ValueError``).
- ``check_inputs(params)``: ``check``, and that the folders and files it reads are there, read
  nothing (``source_data`` and ``target_data`` ask it before they import their models).

A stage looks its domain up once, with :func:`domain_for`, which also checks the profile names
(``sda.config`` validates the params' shape only and knows no domain).
"""

from __future__ import annotations

from sda.domains.registry import (Domain, PretrainedClassifier, PretrainedDiffusion, domain_for, domain_names,
                                  get_domain, register_domain, set_profile)

__all__ = ["Domain", "PretrainedClassifier", "PretrainedDiffusion", "domain_for", "domain_names", "get_domain", "register_domain",
           "set_profile"]

from sda.plugins import import_plugins  # noqa: E402

# the domains: each module registers itself on import; the built-in ones first (embedded is the default),
# then every other module of this package but its support modules (both listed in sda.plugins)
import_plugins(__name__)
