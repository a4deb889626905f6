"""tasks.evaluate: which domains the paired comparison counts as generated corruptions."""

from tasks.evaluate import generated_corruptions


def test_the_generated_corruptions_of_each_domain_index():
    assert generated_corruptions({"corruption_domains": ["fog", "snow"]}) == ["fog", "snow"]  # embedded
    folder = {"corruptions": ["fog", "snow"], "corruption_domains": ["site_b", "fog", "snow"]}
    assert generated_corruptions(folder) == ["fog", "snow"]
    imagenet = {"corruptions": ["fog"], "corruption_domains": ["fog_s3", "fog_s5"]}  # several severities
    assert generated_corruptions(imagenet) == ["fog_s3", "fog_s5"]
