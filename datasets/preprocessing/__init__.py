"""The preprocessing driver both preprocessors share: workers, chunk writing, summary, flags."""
