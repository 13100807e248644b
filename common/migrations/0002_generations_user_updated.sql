-- Live updates re-read what open streams watch: the generations of some users changed since a moment.
CREATE INDEX generations_user_updated ON generations (user_id, updated_at);
