"""Small pieces shared by every service: the records that cross actor boundaries, image preprocessing, sync groups."""
