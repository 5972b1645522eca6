"""The only code that talks to S3."""
