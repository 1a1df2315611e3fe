"""Inputs: the validated request (`request.ImageJob`), validation, images, uploads, and fetches of URLs.
Imports the catalog and the ground floor."""
