# Read by `pw_migrate --directory migrations`. The abstract base model must not
# get a table of its own when someone runs `pw_migrate create --auto`.
IGNORE = ["BaseModel"]
