-- An execution that ends closes the incident it was started for, and only that one:
-- found by its execution id (see Repository.open_incident_of).
CREATE INDEX incidents_execution ON incidents (execution_id) WHERE status = 'open';
