DROP TABLE events;
DROP TABLE orders;
DROP TABLE users;
