"""Knowledge-based plan QA: a clinical dose against the fold ensemble's predicted achievable dose."""
