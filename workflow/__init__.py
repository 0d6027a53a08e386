"""The troubleshooting workflow's stage scripts and the library they share."""
